"""omg-rt export."""
