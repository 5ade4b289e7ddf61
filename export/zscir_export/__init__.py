"""zscir."""
