package password_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/password"
)

// shellSpecial are characters a shell or an env file would interpret.
const shellSpecial = " \t\n'\"`$\\!#&*;|<>(){}[]?~^%=,"

// TestGenerate checks the properties of many generated passwords: the
// length, a letter first, every class present, only unquoted-safe
// characters, all distinct, and every character of the alphabet in use.
func TestGenerate(t *testing.T) {
	const n = 2000
	seen := map[string]bool{}
	used := map[rune]bool{}
	for range n {
		pw, err := password.Generate(rand.Reader, password.Length)
		if err != nil {
			t.Fatal(err)
		}
		if len(pw) != password.Length || password.Length < 24 {
			t.Fatalf("length %d", len(pw))
		}
		if c := pw[0]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			t.Fatalf("starts with %q, want a letter", c)
		}
		if !strings.ContainsAny(pw, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") || !strings.ContainsAny(pw, "abcdefghijklmnopqrstuvwxyz") ||
			!strings.ContainsAny(pw, "0123456789") || !strings.ContainsAny(pw, "-_.:@+") {
			t.Fatalf("a class is missing from a generated password")
		}
		if strings.ContainsAny(pw, shellSpecial) {
			t.Fatalf("a generated password holds a character that needs quoting")
		}
		if seen[pw] {
			t.Fatal("the same password twice")
		}
		seen[pw] = true
		for _, r := range pw {
			used[r] = true
		}
	}
	if len(used) != 26+26+10+6 {
		t.Fatalf("%d distinct characters used in %d passwords, want all 68", len(used), n)
	}
}

// TestGenerateNeedsNoQuoting passes generated passwords through an env
// file (as systemd reads it) and a shell command line, both unquoted: each
// comes back unchanged.
func TestGenerateNeedsNoQuoting(t *testing.T) {
	var env bytes.Buffer
	pws := make([]string, 200)
	for i := range pws {
		pw, err := password.Generate(rand.Reader, password.MinLength)
		if err != nil {
			t.Fatal(err)
		}
		pws[i] = pw
		env.WriteString("SESSIOND_P" + strings.Repeat("X", i%7) + string(rune('A'+i%26)) + "=" + pw + "\n")
	}
	vals, err := config.ParseEnvFile(&env)
	if err != nil {
		t.Fatalf("env file: %v", err)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	out, err := exec.Command(sh, "-c", "printf '%s\\n' "+strings.Join(pws, " ")).Output()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != len(pws) {
		t.Fatalf("the shell split %d passwords into %d words", len(pws), len(lines))
	}
	for i, pw := range pws {
		if lines[i] != pw {
			t.Fatalf("the shell changed password %d", i)
		}
	}
	// Later lines of the env file win for repeated names: check the last of each.
	last := map[string]string{}
	for i, pw := range pws {
		last["SESSIOND_P"+strings.Repeat("X", i%7)+string(rune('A'+i%26))] = pw
	}
	for k, pw := range last {
		if vals[k] != pw {
			t.Fatalf("the env file changed the value of %s", k)
		}
	}
}

func TestGenerateRefuses(t *testing.T) {
	if _, err := password.Generate(rand.Reader, password.MinLength-1); err == nil {
		t.Error("a password shorter than the minimum was made")
	}
	// A source that never yields every class (all zero bytes: "AAAA…").
	if _, err := password.Generate(bytes.NewReader(make([]byte, 1<<20)), password.Length); err == nil {
		t.Error("a constant source made a password")
	}
	boom := errors.New("no entropy")
	if _, err := password.Generate(iotest.ErrReader(boom), password.Length); !errors.Is(err, boom) {
		t.Errorf("err = %v, want the source's error", err)
	}
}
