from prometheus_client import CollectorRegistry, Histogram

from pipeline.metrics import observe_many


def _samples(histogram: Histogram) -> dict[str, float]:
    return {
        f"{s.name}{s.labels}": s.value
        for metric in histogram.collect()
        for s in metric.samples
        if "created" not in s.name
    }


def test_observe_many_counts_exactly_what_observe_one_by_one_counts():
    values = [0.0, 0.0004, 0.0005, 0.0006, 0.01, 0.3, 7.0, 99.0, 0.0025]
    buckets = (0.0005, 0.001, 0.0025, 0.01, 0.5, 10.0)
    one = Histogram("one", "", buckets=buckets, registry=CollectorRegistry())
    many = Histogram("many", "", buckets=buckets, registry=CollectorRegistry())
    for value in values:
        one.observe(value)

    observe_many(many, values)
    observe_many(many, [])

    assert _samples(many) == {k.replace("one", "many", 1): v for k, v in _samples(one).items()}
    assert _samples(many)["many_count{}"] == len(values)
