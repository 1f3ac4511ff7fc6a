package seal_test

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/tokenkeeper/tokenkeeper/internal/seal"
)

// A key rotation: seal under the old key, add a new primary, reseal,
// drop the old key.
func Example_rotation() {
	oldKey, newKey := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)

	before, _ := seal.NewKeyring(oldKey)
	v, _ := before.Seal("comp.wxA.refresh_token", []byte("refresh-token"))

	during, _ := seal.NewKeyring(newKey, oldKey) // new primary, old still opens
	p, _ := during.Open("comp.wxA.refresh_token", v)
	fmt.Println(string(p))
	v2, changed, _ := during.Reseal("comp.wxA.refresh_token", v)
	fmt.Println("resealed:", changed)

	after, _ := seal.NewKeyring(newKey) // the old key dropped
	p, _ = after.Open("comp.wxA.refresh_token", v2)
	fmt.Println(string(p))
	_, err := after.Open("comp.wxA.refresh_token", v)
	fmt.Println(errors.Is(err, seal.ErrUnknownKey))

	_, err = after.Open("comp.wxB.refresh_token", v2) // moved to another key
	fmt.Println(errors.Is(err, seal.ErrAuth))
	// Output:
	// refresh-token
	// resealed: true
	// refresh-token
	// true
	// true
}
