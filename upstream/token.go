package upstream

import "time"

// TokenExpiry returns the exp claim of a JWT (Erply or Identity), or the zero
// time if tok is not a JWT or has no exp. The signature is not checked: the
// daemon only needs to know when to fetch a fresh one.
func TokenExpiry(tok string) time.Time { return jwtExpiry(tok) }
