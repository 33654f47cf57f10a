// Package erplytest owns an in-process fake Erply API server with Erply's documented session semantics and programmable faults.
package erplytest

// Erply error codes the fake returns. They mirror the constants in package
// upstream; they are repeated here rather than imported so that upstream's
// own in-package tests can import erplytest without an import cycle.
const (
	codeAccountNotFound  = 1001
	codeUnknownRequest   = 1005
	codeMissingParameter = 1010
	codeSameValue        = 1012
	codeInvalidValue     = 1016
	codeLoginMissing     = 1050
	codeLoginFailed      = 1051
	codeUserBlocked      = 1052
	codeLoginRefused     = 1053
	codeSessionExpired   = 1054
	codeSessionInvalid   = 1055
	codeSessionTooOld    = 1056
	codeSSONoUser        = 1173
	codeJWTInvalid       = 1191
)
