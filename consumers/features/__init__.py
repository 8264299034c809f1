"""Pure feature code: decoding images and computing descriptors. No I/O, no Kafka."""
