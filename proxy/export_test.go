package proxy

// SetOnQueue makes p call f each time a caller starts waiting for a slot,
// once its queue timer is armed.
func SetOnQueue(p *Proxy, f func()) { p.onQueue = f }
