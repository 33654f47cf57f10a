package password

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// Length is the length of a generated password.
const Length = 32

// MinLength is the shortest password Generate makes.
const MinLength = 24

// The character classes of a generated password. The symbols need no
// quoting in a shell word, a systemd EnvironmentFile, a Kubernetes env value
// or a URL form; the first character is always a letter, so that the
// password is never taken for a command-line option.
const (
	upper   = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	lower   = "abcdefghijklmnopqrstuvwxyz"
	digits  = "0123456789"
	symbols = "-_.:@+"
	letters = upper + lower
	all     = upper + lower + digits + symbols
)

// maxDraws bounds the tries for a password holding every class; a
// 24-character draw lacks one less than one time in five, so 64 tries run
// out only with a broken random source.
const maxDraws = 64

var errNoEntropy = errors.New("password: the random source never gave a password with every character class")

// Generate returns a new password of n characters (at least MinLength),
// each drawn uniformly with random bytes from r (crypto/rand.Reader in the
// daemon): upper- and lower-case letters, digits and symbols from a set
// that needs no quoting, at least one of each, starting with a letter.
func Generate(r io.Reader, n int) (string, error) {
	if n < MinLength {
		return "", fmt.Errorf("password: length %d is under the minimum %d", n, MinLength)
	}
	buf := make([]byte, n)
	for range maxDraws {
		if err := draw(r, buf[:1], letters); err != nil {
			return "", err
		}
		if err := draw(r, buf[1:], all); err != nil {
			return "", err
		}
		pw := string(buf)
		if hasEveryClass(pw) {
			return pw, nil
		}
	}
	return "", errNoEntropy
}

// draw fills dst with characters of alphabet chosen uniformly: a random
// byte is used only below the largest multiple of len(alphabet), so no
// character is likelier than another.
func draw(r io.Reader, dst []byte, alphabet string) error {
	limit := 256 - 256%len(alphabet)
	var chunk [64]byte
	for i := 0; i < len(dst); {
		k, err := io.ReadFull(r, chunk[:])
		if err != nil {
			return fmt.Errorf("password: reading random bytes: %w", err)
		}
		for _, b := range chunk[:k] {
			if int(b) >= limit {
				continue
			}
			dst[i] = alphabet[int(b)%len(alphabet)]
			if i++; i == len(dst) {
				return nil
			}
		}
	}
	return nil
}

func hasEveryClass(pw string) bool {
	return strings.ContainsAny(pw, upper) && strings.ContainsAny(pw, lower) &&
		strings.ContainsAny(pw, digits) && strings.ContainsAny(pw, symbols)
}
