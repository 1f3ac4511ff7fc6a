package contract_test

import (
	"testing"

	"github.com/nats-io/nats.go/micro"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// The error headers are micro's; contract spells them out so that clients
// need not import micro (this test does, the package does not).
func TestErrorHeadersAreMicros(t *testing.T) {
	if contract.ErrorCodeHeader != micro.ErrorCodeHeader || contract.ErrorHeader != micro.ErrorHeader {
		t.Fatalf("contract headers %q %q, micro's %q %q", contract.ErrorCodeHeader, contract.ErrorHeader, micro.ErrorCodeHeader, micro.ErrorHeader)
	}
}
