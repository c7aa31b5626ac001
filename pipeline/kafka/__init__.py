"""Every Kafka client of the pipeline is built here, from the one connection block of the settings
(`PIPELINE_KAFKA__*`): confluent-kafka consumers, producers and admin clients, aiokafka's, and
Faust's app. No other module constructs one (tests/unit/kafka/test_one_place.py keeps it so)."""
