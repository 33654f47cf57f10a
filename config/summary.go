package config

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Summary describes the credential on one line for logs and check-config,
// e.g. `pos: kind=password clientCode=123456 user=api-user
// secret=file:/etc/erply-sessiond/pos.password sessionLength=3600s`. A
// secret shows only where it comes from (inline or file:PATH), never its value.
func (c Credential) Summary() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s: kind=%s", c.Name, c.Kind)
	if c.Kind == KindPIN {
		fmt.Fprintf(&sb, " parent=%s", c.Parent)
	}
	fmt.Fprintf(&sb, " clientCode=%s", c.ClientCode)
	if c.Username != "" {
		fmt.Fprintf(&sb, " user=%s", c.Username)
	}
	var s Secret
	switch c.Kind {
	case KindPassword:
		s = c.Password
	case KindPIN:
		s = c.PIN
	case KindIdentity, KindOAuth:
		s = c.Token
	}
	switch {
	case s.File != "":
		fmt.Fprintf(&sb, " secret=file:%s", s.File)
	case s.Value != "":
		sb.WriteString(" secret=inline")
	default:
		sb.WriteString(" secret=none")
	}
	fmt.Fprintf(&sb, " sessionLength=%ds", c.SessionLength)
	if c.APIURL != "" && c.APIURL != DefaultAPIURL {
		fmt.Fprintf(&sb, " apiURL=%s", RedactURL(c.APIURL))
	}
	if len(c.AllowUIDs) > 0 {
		fmt.Fprintf(&sb, " allowUIDs=%s", joinIDs(c.AllowUIDs))
	}
	if len(c.AllowGIDs) > 0 {
		fmt.Fprintf(&sb, " allowGIDs=%s", joinIDs(c.AllowGIDs))
	}
	if c.SinkFile != "" {
		fmt.Fprintf(&sb, " sink=%s sinkMode=%04o", c.SinkFile, uint32(c.SinkMode.Perm()))
	}
	if c.RotatePassword == RotateExpired {
		fmt.Fprintf(&sb, " rotatePassword=%s", c.RotatePassword)
	}
	if c.FleetLocal {
		sb.WriteString(" fleet=local")
	}
	return sb.String()
}

// RedactURL hides a password in an API URL's (or URL template's) user
// info, for logs and answers; the URL itself keeps it for requests.
func RedactURL(s string) string {
	u, err := url.Parse(strings.ReplaceAll(s, "{clientCode}", "CLIENTCODE"))
	if err != nil || u.User == nil {
		return s
	}
	return strings.ReplaceAll(u.Redacted(), "CLIENTCODE", "{clientCode}")
}

func joinIDs(ids []uint32) string {
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.FormatUint(uint64(id), 10)
	}
	return strings.Join(parts, ",")
}

// Equal reports whether every setting of c and o is the same, secrets
// included. A reload keeps the session of a credential that is Equal to its
// old self; a secret file's path is compared, not its content, which is
// re-read at every login anyway.
func (c Credential) Equal(o Credential) bool {
	return c.Name == o.Name &&
		c.Kind == o.Kind &&
		c.ClientCode == o.ClientCode &&
		c.APIURL == o.APIURL &&
		c.Username == o.Username &&
		c.Password == o.Password &&
		c.PIN == o.PIN &&
		c.Parent == o.Parent &&
		c.Token == o.Token &&
		c.SessionLength == o.SessionLength &&
		slices.Equal(c.AllowUIDs, o.AllowUIDs) &&
		slices.Equal(c.AllowGIDs, o.AllowGIDs) &&
		c.SinkFile == o.SinkFile &&
		c.SinkMode == o.SinkMode &&
		c.RotatePassword == o.RotatePassword &&
		c.FleetLocal == o.FleetLocal
}

// CheckConfig is `erply-sessiond check-config`: it loads the configuration
// from environ like the daemon would and writes to w every warning
// ("warning: …"), then either every problem, one per line, returning the
// Load error, or one Summary line per credential, returning nil. The caller
// need not print the returned error again.
func CheckConfig(environ []string, w io.Writer) error {
	c, err := Load(environ)
	var ve *ValidationError
	errors.As(err, &ve)
	var sb strings.Builder
	var warnings []string
	switch {
	case ve != nil:
		warnings = ve.Warnings
	case c != nil:
		warnings = c.Warnings
	}
	for _, wn := range warnings {
		sb.WriteString("warning: " + wn + "\n")
	}
	switch {
	case ve != nil:
		for _, p := range ve.Problems {
			sb.WriteString(p.String() + "\n")
		}
	case err != nil:
		sb.WriteString(err.Error() + "\n")
	default:
		for _, cr := range c.Credentials {
			sb.WriteString(cr.Summary() + "\n")
		}
		if c.Fleet.Enabled() {
			sb.WriteString(c.Fleet.Summary() + "\n")
		}
	}
	if _, werr := io.WriteString(w, sb.String()); werr != nil && err == nil {
		return werr
	}
	return err
}
