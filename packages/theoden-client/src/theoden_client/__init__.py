"""TheODen client."""
