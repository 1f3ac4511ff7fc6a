package wxcrypt_test

import (
	"fmt"

	"github.com/tokenkeeper/tokenkeeper/internal/wxcrypt"
)

// A component push, sealed as WeChat (or the emulator's push driver)
// sends it and opened as the callback reads it.
func Example() {
	c, err := wxcrypt.New("QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wx5823bf96d3bd56c7")
	if err != nil {
		panic(err)
	}
	push := wxcrypt.ComponentPush{AppID: "wx5823bf96d3bd56c7", CreateTime: 1700000000,
		InfoType: wxcrypt.InfoVerifyTicket, ComponentVerifyTicket: "ticket@@@xyz"}
	body, sig, err := c.Seal(push.XML(), "1700000000", "n0nce")
	if err != nil {
		panic(err)
	}
	// POST /wechat/component/<app>?msg_signature=<sig>&timestamp=1700000000&nonce=n0nce
	got, err := c.OpenComponentPush(sig, "1700000000", "n0nce", body)
	if err != nil {
		panic(err)
	}
	fmt.Println(got) // String leaves the ticket out
	fmt.Println(got.ComponentVerifyTicket == push.ComponentVerifyTicket)

	_, err = c.OpenComponentPush("0000000000000000000000000000000000000000", "1700000000", "n0nce", body)
	fmt.Println(err)
	// Output:
	// component_verify_ticket push for wx5823bf96d3bd56c7 created 1700000000
	// true
	// wxcrypt: bad msg_signature
}
