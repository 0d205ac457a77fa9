"""Light client for the ALTO service; owns the wire schema shared by engine, service and client."""
