"""Test harness: TLS material, a token server, real registry processes and test images."""
