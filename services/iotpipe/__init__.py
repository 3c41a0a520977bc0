"""iotpipe: IoT telemetry pipeline (sensors -> Kafka -> Spark live metrics + window-metrics API)."""

__version__ = "0.1.0"
