from __future__ import annotations

from pipeline.synthetic import cards


def test_account_features_are_a_function_of_the_seed():
    assert cards.accounts(100).equals(cards.accounts(100))
    assert list(cards.accounts(3)["account_id"]) == [1, 2, 3]


def test_the_fraud_rule_gives_a_minority_class():
    data = cards.transactions(20_000, cards.accounts(1000))
    assert 0.01 < data.label.mean() < 0.15
    foreign = data.features["is_foreign"] == 1
    assert data.label[foreign].mean() > 2 * data.label[~foreign].mean()
