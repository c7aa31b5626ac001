from __future__ import annotations

from pipeline.local.cluster import _java_abs, _java_hash


def test_the_transactional_id_hash_is_javas_string_hash_code():
    # Values of String.hashCode() from the JDK.
    assert _java_hash("abc") == 96354
    assert _java_hash("hello") == 99162322
    assert _java_hash("polygenelubricants") == -(1 << 31)
    assert _java_abs(_java_hash("polygenelubricants")) == 0, "Kafka's Utils.abs, not Math.abs"
    assert _java_hash("\U0001f600") == 1772899, "a character beyond the BMP counts as its two UTF-16 units"
