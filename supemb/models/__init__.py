"""supemb.models — see docs/DESIGN.md for the planned contents."""
