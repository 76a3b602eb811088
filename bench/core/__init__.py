"""The native simulation core (issue 17); bench/core/reference holds its C yardstick."""
