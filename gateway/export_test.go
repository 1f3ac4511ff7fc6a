package gateway

// InFlight returns the number of handlers running.
func InFlight(g *Gateway) int64 { return g.inflight.Load() }
