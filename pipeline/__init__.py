"""Pipeline: DALI readers for the uniform (P) and minority (Q) streams, and the torch reference loader."""
