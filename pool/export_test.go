package pool

// WaitBackground waits for the logins started in the background (pin
// followers, reloads, changed secrets) to finish.
func (p *Pool) WaitBackground() { p.bg.wait() }
