"""TheODen server."""
