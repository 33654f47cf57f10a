package erplytest

import "testing"

// TestPasswordExpiredFlag: SetPasswordExpired makes the user's login
// replies (verifyUser, getSessionKeyUser) say isPasswordExpired until a
// changePassword call; a refused change keeps the flag.
func TestPasswordExpiredFlag(t *testing.T) {
	e := newEnv(t)
	flag := func(rec map[string]any) any { return rec["isPasswordExpired"] }
	key := e.login()
	if got := flag(e.record(e.call("getSessionKeyUser", "sessionKey", key))); got != false {
		t.Fatalf("isPasswordExpired = %v before SetPasswordExpired, want false", got)
	}
	e.s.SetPasswordExpired(e.cc, e.user, true)
	rec := e.record(e.call("verifyUser", "username", e.user, "password", e.pw))
	if flag(rec) != true {
		t.Fatalf("verifyUser isPasswordExpired = %v, want true", flag(rec))
	}
	key = rec["sessionKey"].(string)
	if got := flag(e.record(e.call("getSessionKeyUser", "sessionKey", key))); got != true {
		t.Fatalf("getSessionKeyUser isPasswordExpired = %v, want true", got)
	}
	// Another user of the account is not affected.
	cashier := e.record(e.call("switchUser", "sessionKey", key, "cardCode", e.pin))
	if flag(cashier) != false {
		t.Fatalf("the cashier's reply says %v, want false", flag(cashier))
	}
	e.wantError(e.call("changePassword", "sessionKey", key, "oldPassword", "wrong-password", "newPassword", "brand-new-pw-1"), 1016, "oldPassword")
	if flag(e.record(e.call("verifyUser", "username", e.user, "password", e.pw))) != true {
		t.Fatal("a refused change cleared the flag")
	}
	key = e.login()
	rec = e.record(e.call("changePassword", "sessionKey", key, "oldPassword", e.pw, "newPassword", "brand-new-pw-1"))
	if flag(rec) != false {
		t.Fatalf("changePassword's own reply says isPasswordExpired %v, want false", flag(rec))
	}
	if got := e.s.Password(e.cc, e.user); got != "brand-new-pw-1" {
		t.Fatalf("Password = %q after the change", got)
	}
	if flag(e.record(e.call("verifyUser", "username", e.user, "password", "brand-new-pw-1"))) != false {
		t.Fatal("the flag survived changePassword")
	}
}
