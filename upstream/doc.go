// Package upstream is the Erply API client: the form-encoded wire format, typed errors carrying Erply codes, and safe retries.
package upstream
