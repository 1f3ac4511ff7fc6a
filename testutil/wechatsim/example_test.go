package wechatsim_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/tokenkeeper/tokenkeeper/testutil/wechatsim"
)

// The emulator behaves like WeChat's token endpoint: a new token
// invalidates the previous one after the grace period.
func Example() {
	sim, srv := wechatsim.NewServer(wechatsim.Options{ExpiresIn: time.Hour, Grace: -1}) // no overlap
	defer srv.Close()
	sim.AddApp("wx0123456789abcdef", "the-secret")

	fetch := func() string {
		resp, err := http.Get(srv.URL + "/cgi-bin/token?grant_type=client_credential&appid=wx0123456789abcdef&secret=the-secret")
		if err != nil {
			panic(err)
		}
		defer resp.Body.Close()
		var body struct {
			AccessToken string `json:"access_token"`
			ExpiresIn   int    `json:"expires_in"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return body.AccessToken
	}
	first := fetch()
	fmt.Println("first valid:", sim.Check(first) == nil)
	second := fetch()
	fmt.Println("second valid:", sim.Check(second) == nil)
	fmt.Println("first still valid:", sim.Check(first) == nil)
	// Output:
	// first valid: true
	// second valid: true
	// first still valid: false
}
