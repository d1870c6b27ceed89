"""supemb.data — see docs/DESIGN.md for the planned contents."""
