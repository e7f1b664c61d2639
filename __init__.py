"""fedmq: cross-silo federated learning over MQTT."""

__version__ = "0.1.0"
