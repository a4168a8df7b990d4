"""Measure latency and accuracy of exported models on any device: needs only numpy and an inference runtime."""
