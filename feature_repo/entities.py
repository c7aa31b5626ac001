from feast import Entity, ValueType

account = Entity(
    name="account",
    join_keys=["account_id"],
    value_type=ValueType.INT64,
    description="A card account; requests name it as entity.account_id.",
)

device = Entity(
    name="device",
    join_keys=["device_id"],
    value_type=ValueType.INT64,
    description="A machine reporting telemetry; requests name it as entity.device_id.",
)
