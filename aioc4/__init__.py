"""aioc4: fast, dependable async download of C4 into JSONL parts on local disk or S3."""

__version__ = "0.1.0"
