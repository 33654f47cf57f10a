package password

// WaitIdle waits for the rotations in flight, automatic ones included, to
// end. Call it when no login can start one meanwhile.
func (r *Rotator) WaitIdle() { r.wg.Wait() }
