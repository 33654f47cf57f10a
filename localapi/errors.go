package localapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/erply-sessiond/erply-sessiond/internal/answer"
)

// Errors the API itself decides.
var (
	errUnknownCredential = answer.New(http.StatusNotFound, "unknown_credential", "unknown credential")
	errUnknownList       = answer.New(http.StatusNotFound, "unknown_list", "the session has no such endpoint list")
	errNoEndpoints       = answer.New(http.StatusNotFound, "no_endpoints", "the endpoint list is empty")
	errUnknownEndpoint   = answer.New(http.StatusNotFound, "unknown_endpoint", "no such endpoint in the list")
	errNotFound          = answer.New(http.StatusNotFound, "not_found", "no such route")
	errTCPNotFound       = answer.New(http.StatusNotFound, "not_found", "session routes are not served on the TCP listener")
	errMethod            = answer.New(http.StatusMethodNotAllowed, "method_not_allowed", "method not allowed on this route")
	errHost              = answer.New(http.StatusForbidden, "forbidden_host", "session routes on TCP answer only requests for a loopback Host (localhost, 127.0.0.1 or [::1])")
	errMissingHeader     = answer.New(http.StatusPreconditionFailed, "missing_header", "session routes on TCP require the header "+RequestHeader+": 1")
	errMissingKey        = answer.New(http.StatusBadRequest, "missing_key", "form or query field key (the stale session key) is required")
	errMissingTarget     = answer.New(http.StatusBadRequest, "missing_target", "form or query field url or target is required")
	errRotateTCP         = answer.New(http.StatusNotFound, "not_found", "rotate-password is served on the Unix socket only")
)

// errRotateForbidden is the answer to a caller who is neither root nor the
// daemon's user.
func errRotateForbidden(ci *connInfo) *answer.Error {
	msg := "only root and the daemon's user may rotate passwords"
	if ci.ok {
		msg = "uid " + strconv.FormatUint(uint64(ci.uid), 10) + " may not rotate passwords: only root and the daemon's user may"
	}
	return answer.New(http.StatusForbidden, "forbidden", msg)
}

// errNoToken is the answer of a JWT route when the session carries no such token.
func errNoToken(what string) *answer.Error {
	return answer.New(http.StatusNotFound, "no_token", "the session has no "+what)
}

// errForbidden names the caller's uid (not a secret) so an operator can fix ALLOW_UIDS.
func errForbidden(ci *connInfo) *answer.Error {
	msg := "caller may not read this credential"
	switch {
	case ci.tcp:
		msg = "a credential restricted by ALLOW_UIDS or ALLOW_GIDS is served only on the Unix socket"
	case ci.ok:
		msg = "uid " + strconv.FormatUint(uint64(ci.uid), 10) + " may not read this credential"
	}
	return answer.New(http.StatusForbidden, "forbidden", msg)
}

// Content types, shared by every response so that setting one allocates nothing.
var (
	textPlain       = []string{"text/plain; charset=utf-8"}
	applicationJSON = []string{"application/json"}
)

// writeJSON answers v as JSON with a trailing newline, without escaping
// HTML characters (URLs stay readable).
func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only programming errors get here: every value is a plain struct.
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":"internal","message":"encoding the answer failed"}` + "\n")
	}
	writeBody(w, status, applicationJSON, buf.Bytes())
}

func writeBody(w http.ResponseWriter, status int, contentType []string, b []byte) {
	w.Header()["Content-Type"] = contentType
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
