package upstream_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestNonNumericIDsLogIn: a login reply whose IDs are not numbers
// ("userID":"abc", as the official SDK, which keeps IDs as strings, would
// accept) still logs in, with those IDs read as 0 and one warning that
// names the fields but never their values.
func TestNonNumericIDsLogIn(t *testing.T) {
	body := okReply("verifyUser", `[{"sessionKey":"k-ids","sessionLength":3600,"userID":"abc",`+
		`"employeeID":"`+password+`","groupID":{"id":3},"userName":"demo@example.com","groupName":"Admin"}]`)
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) { writeJSON(w, body) })
	c, logs := newClient(t, nil)

	s, err := c.VerifyUser(t.Context(), f.account(), "demo@example.com", password, 3600)
	if err != nil {
		t.Fatalf("login lost over an ID field: %v", err)
	}
	if s.SessionKey != "k-ids" || s.SessionLength != 3600 || s.UserID != 0 || s.EmployeeID != 0 || s.GroupID != 0 ||
		s.UserName != "demo@example.com" || s.GroupName != "Admin" {
		t.Errorf("session = %+v", s)
	}
	var warnings []string
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, `"level":"warn"`) {
			warnings = append(warnings, line)
		}
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], `"fields":["userID","employeeID","groupID"]`) {
		t.Errorf("warnings = %q, want one naming userID, employeeID and groupID", warnings)
	}
	assertNoSecrets(t, "the log", logs.String())

	// Numeric IDs, bare or quoted, warn about nothing.
	body = okReply("verifyUser", `[{"sessionKey":"k2","userID":"6","employeeID":12,"groupID":"3"}]`)
	before := strings.Count(logs.String(), `"level":"warn"`)
	if s, err = c.VerifyUser(t.Context(), f.account(), "demo@example.com", password, 3600); err != nil || s.UserID != 6 || s.EmployeeID != 12 || s.GroupID != 3 {
		t.Fatalf("numeric IDs: %+v, %v", s, err)
	}
	if strings.Count(logs.String(), `"level":"warn"`) != before {
		t.Error("a warning for numeric IDs")
	}
}

// TestGetSessionKeyUserNonNumericIDs: getSessionKeyUser, which restores a
// session's user fields, is as lenient as a login.
func TestGetSessionKeyUserNonNumericIDs(t *testing.T) {
	body := okReply("getSessionKeyUser", `[{"sessionKey":"k","userID":"abc","employeeID":"7"}]`)
	f := newFake(t, func(w http.ResponseWriter, r *http.Request, _ int64) { writeJSON(w, body) })
	c, logs := newClient(t, nil)
	s, err := c.GetSessionKeyUser(t.Context(), f.account(), "k")
	if err != nil || s.UserID != 0 || s.EmployeeID != 7 {
		t.Fatalf("getSessionKeyUser = %+v, %v", s, err)
	}
	if n := strings.Count(logs.String(), `"fields":["userID"]`); n != 1 {
		t.Errorf("%d warnings naming userID, want 1", n)
	}
}
