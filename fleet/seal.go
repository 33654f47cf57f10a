package fleet

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/erply-sessiond/erply-sessiond/config"
)

// sealWith encrypts plaintext with the first key of the keyring
// (AES-256-GCM, a random nonce prepended by the standard library) bound to
// ad. It returns the key's ID, stored beside the ciphertext in clear so
// that a reader knows which key to try.
func sealWith(keys []config.Key, plaintext, ad []byte) (kid string, ct []byte, err error) {
	if len(keys) == 0 {
		return "", nil, errors.New("the keyring is empty")
	}
	aead, err := newAEAD(keys[0])
	if err != nil {
		return "", nil, err
	}
	return keys[0].ID, aead.Seal(nil, nil, plaintext, ad), nil
}

// openWith decrypts a record sealed with key kid. An error is an
// *OpenError: the key is missing, or it or the additional data differ.
func openWith(keys []config.Key, kid string, ct, ad []byte) ([]byte, error) {
	for _, k := range keys {
		if k.ID != kid {
			continue
		}
		aead, err := newAEAD(k)
		if err != nil {
			return nil, err
		}
		pt, err := aead.Open(nil, nil, ct, ad)
		if err != nil {
			return nil, &OpenError{KeyID: kid}
		}
		return pt, nil
	}
	return nil, &OpenError{KeyID: kid, Unknown: true}
}

func newAEAD(k config.Key) (cipher.AEAD, error) {
	block, err := aes.NewCipher(k.Secret[:])
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", k.ID, err)
	}
	return cipher.NewGCMWithRandomNonce(block)
}

// OpenError is a shared record this daemon cannot open. The daemon then
// keeps the credential local and never writes its record.
type OpenError struct {
	KeyID string
	// Unknown is set when the keyring has no key of that ID; otherwise the
	// key or the credential's identity differs from the writer's.
	Unknown bool
}

// Error says why the record cannot be opened; it never shows key material.
func (e *OpenError) Error() string {
	if e.Unknown {
		return "the shared record is sealed with key " + strconv.Quote(e.KeyID) + ", which is not in this daemon's keyring"
	}
	return "the shared record does not open with key " + strconv.Quote(e.KeyID) +
		": the key differs, or this credential's fleet name, kind, client code or user differs from the daemon that wrote it"
}

// identity is what binds a record to one credential of one fleet: the
// additional data of its encryption. Two daemons share a record only when
// every field is equal.
type identity struct {
	fleet, name, kind, clientCode, user string
}

func identityOf(fleetName string, c config.Credential) identity {
	user := c.Username
	if c.Kind == config.KindPIN {
		user = "parent:" + c.Parent
	}
	return identity{fleet: fleetName, name: c.Name, kind: string(c.Kind), clientCode: c.ClientCode, user: user}
}

// ad is the additional data of a record of type what ("session" or
// "hold") at version v: a reader whose identity differs, or a header
// (expiry, generation) changed in Redis, fails to open it.
func (id identity) ad(what string, v version) []byte {
	return []byte(strings.Join([]string{
		"erply-sessiond fleet v1", what, id.fleet, id.name, id.kind, id.clientCode, id.user,
		strconv.FormatInt(v.Exp, 10), strconv.FormatUint(v.Gen, 10),
	}, "\x00"))
}
