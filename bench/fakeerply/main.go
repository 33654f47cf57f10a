// Command fakeerply runs the fake Erply API of upstream/erplytest for the benchmark script, with a daemon env file for N credentials and a per-credential count of upstream logins.
//
// Credentials come in pairs, each pair in an account of its own: a password
// credential (a manager) and a PIN credential switched in on top of it (a
// cashier). The first pair is named pos and cashier, the next pos_2 and
// cashier_2, and so on; an odd count ends with a password credential alone.
// Because every account holds exactly one pair, the account's verifyUser
// calls are the password credential's logins and its switchUser calls the PIN
// credential's.
//
// Usage:
//
//	fakeerply -creds N -env FILE -counts FILE
//
// It writes the env file (SESSIOND_API_URL, SESSIOND_CREDENTIALS and every
// credential's settings, with random passwords and PINs), then prints
// "url <APIURL>" on stdout and serves until SIGTERM or SIGINT. On SIGUSR1 and
// at exit it writes the counts file and prints "counts <FILE>".
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/erply-sessiond/erply-sessiond/clock"
	"github.com/erply-sessiond/erply-sessiond/upstream/erplytest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, usr1); err != nil {
		fmt.Fprintln(os.Stderr, "fakeerply:", err)
		os.Exit(1)
	}
}

// credential is one configured credential and where its logins are counted.
type credential struct {
	name, kind, clientCode, username string
	parent                           string // pin: the password credential it switches from
	password, pin                    string
}

// otherRequests are the non-login calls counted per account in the counts file.
var otherRequests = []string{"getJwtToken", "getIdentityToken", "getSessionKeyInfo", "getSessionKeyUser"}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, usr1 <-chan os.Signal) error {
	fs := flag.NewFlagSet("fakeerply", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("creds", 2, "number of credentials (pairs of a password and a PIN credential)")
	envPath := fs.String("env", "", "daemon env file to write (required)")
	countsPath := fs.String("counts", "", "file the login counts are written to on SIGUSR1 and at exit (required)")
	length := fs.Int("session-length", 0, "SESSION_LENGTH in seconds for every credential; 0 leaves the daemon's default")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *n < 1 || *n > 10000:
		return fmt.Errorf("-creds %d: want 1..10000", *n)
	case *envPath == "" || *countsPath == "":
		return errors.New("-env and -counts are required")
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	fake := erplytest.New(clock.Real{})
	defer fake.Close()
	creds, err := seed(fake, *n)
	if err != nil {
		return err
	}
	if err := writeAtomic(*envPath, envFile(fake.APIURL(), creds, *length)); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "url %s\n", fake.APIURL())

	dump := func() error {
		if err := writeAtomic(*countsPath, counts(fake, creds)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "counts %s\n", *countsPath)
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return dump()
		case <-usr1:
			if err := dump(); err != nil {
				return err
			}
		}
	}
}

// seed adds the accounts and users for n credentials, with random secrets.
func seed(fake *erplytest.Server, n int) ([]credential, error) {
	creds := make([]credential, 0, n)
	for pair := 1; len(creds) < n; pair++ {
		suffix := ""
		if pair > 1 {
			suffix = "_" + strconv.Itoa(pair)
		}
		code := strconv.Itoa(500000 + pair)
		password, err := randomHex(12)
		if err != nil {
			return nil, err
		}
		pin, err := randomPIN()
		if err != nil {
			return nil, err
		}
		a := fake.AddAccount(code)
		manager := credential{name: "pos" + suffix, kind: "password", clientCode: code,
			username: "manager@shop" + strconv.Itoa(pair) + ".example", password: password}
		a.AddUser(erplytest.User{Username: manager.username, Password: password, UserID: 2*pair + 1,
			EmployeeID: 2*pair + 1, EmployeeName: "Manager " + strconv.Itoa(pair), GroupID: 1, GroupName: "Administrators"})
		creds = append(creds, manager)
		if len(creds) == n {
			break
		}
		cashier := credential{name: "cashier" + suffix, kind: "pin", clientCode: code, parent: manager.name, pin: pin}
		a.AddUser(erplytest.User{Username: "cashier@shop" + strconv.Itoa(pair) + ".example", PIN: pin,
			UserID: 2*pair + 2, EmployeeID: 2*pair + 2, EmployeeName: "Cashier " + strconv.Itoa(pair), GroupID: 3, GroupName: "Cashiers"})
		creds = append(creds, cashier)
	}
	return creds, nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// randomPIN returns a six-digit PIN.
func randomPIN() (string, error) {
	v, err := rand.Int(rand.Reader, big.NewInt(900000))
	if err != nil {
		return "", err
	}
	return strconv.FormatInt(100000+v.Int64(), 10), nil
}

// envFile renders the daemon's settings for creds as KEY=VALUE lines.
func envFile(apiURL string, creds []credential, length int) []byte {
	var sb strings.Builder
	names := make([]string, len(creds))
	for i, c := range creds {
		names[i] = c.name
	}
	fmt.Fprintf(&sb, "# written by bench/fakeerply: %d credentials against the fake Erply\n", len(creds))
	fmt.Fprintf(&sb, "SESSIOND_API_URL=%s\n", apiURL)
	fmt.Fprintf(&sb, "SESSIOND_CREDENTIALS=%s\n", strings.Join(names, ","))
	for _, c := range creds {
		p := "SESSIOND_" + strings.ToUpper(c.name) + "_"
		fmt.Fprintf(&sb, "%sKIND=%s\n", p, c.kind)
		switch c.kind {
		case "password":
			fmt.Fprintf(&sb, "%sCLIENT_CODE=%s\n%sUSERNAME=%s\n%sPASSWORD=%s\n", p, c.clientCode, p, c.username, p, c.password)
		case "pin":
			fmt.Fprintf(&sb, "%sPARENT=%s\n%sPIN=%s\n", p, c.parent, p, c.pin)
		}
		if length > 0 {
			fmt.Fprintf(&sb, "%sSESSION_LENGTH=%d\n", p, length)
		}
	}
	return []byte(sb.String())
}

// counts renders the login counts: one tab-separated row per credential
// (name, kind, client code, logins, the account's other calls) and a
// trailing total.
func counts(fake *erplytest.Server, creds []credential) []byte {
	var sb strings.Builder
	sb.WriteString("credential\tkind\tclientCode\tlogins\taccountOtherCalls\n")
	for _, c := range creds {
		req := "verifyUser"
		if c.kind == "pin" {
			req = "switchUser"
		}
		other := 0
		for _, r := range otherRequests {
			other += fake.CallsFor(c.clientCode, r)
		}
		fmt.Fprintf(&sb, "%s\t%s\t%s\t%d\t%d\n", c.name, c.kind, c.clientCode, fake.CallsFor(c.clientCode, req), other)
	}
	fmt.Fprintf(&sb, "# total upstream calls: %d\n", fake.TotalCalls())
	return []byte(sb.String())
}

// writeAtomic writes b to a temporary file next to path and renames it, so
// that a reader polling for path never sees it half written.
func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".fakeerply-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
