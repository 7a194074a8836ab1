"""kmsd: key management on AWS Secrets Manager and KMS, with a long-polling metadata server."""

__version__ = "0.1.0"
