package wxcrypt

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
)

// Limits of the flat XML WeChat sends: <xml> and one level of fields
// (unknown fields may nest a little).
const (
	maxDepth    = 8
	maxElements = 256
)

// envelopeOverhead is what Seal's envelope adds to the Encrypt field,
// with an appid of the longest kind.
const envelopeOverhead = 200

// Envelope is the outer XML of a push. An Open Platform component push
// carries AppId, an Official Account's message ToUserName.
type Envelope struct {
	ToUserName string
	AppID      string
	Encrypt    string
}

// ParseEnvelope parses the outer XML of a push. It refuses a body over
// MaxBodySize (ErrTooLarge) and anything but one flat <xml> element with
// an Encrypt field (ErrMalformed): no DOCTYPE, no entities beyond XML's
// five, no duplicate fields.
func ParseEnvelope(body []byte) (Envelope, error) {
	if len(body) > MaxBodySize {
		return Envelope{}, ErrTooLarge
	}
	f, err := parseFlat(body)
	if err != nil {
		return Envelope{}, err
	}
	var e Envelope
	if e.Encrypt, err = f.get("Encrypt", true); err != nil {
		return Envelope{}, err
	}
	if e.AppID, err = f.get("AppId", false); err != nil {
		return Envelope{}, err
	}
	if e.ToUserName, err = f.get("ToUserName", false); err != nil {
		return Envelope{}, err
	}
	return e, nil
}

// Open authenticates and decrypts a push: the query's msg_signature,
// timestamp and nonce and the request body. It returns the decrypted
// message (XML), or an error matching one of ErrTooLarge, ErrMalformed,
// ErrBadSignature, ErrBadPadding, ErrAppIDMismatch; the order of the
// checks is the package documentation's. Nothing is decrypted unless the
// signature holds.
func (c *Crypter) Open(msgSignature, timestamp, nonce string, body []byte) ([]byte, error) {
	env, err := ParseEnvelope(body)
	if err != nil {
		return nil, err
	}
	if err := c.Verify(msgSignature, timestamp, nonce, env.Encrypt); err != nil {
		return nil, err
	}
	if env.AppID != "" && env.AppID != c.appID {
		return nil, fmt.Errorf("%w: the envelope's AppId is another app's", ErrAppIDMismatch)
	}
	return c.Decrypt(env.Encrypt)
}

// Seal encrypts msg (Encrypt) and returns the envelope
// <xml><AppId>…</AppId><Encrypt>…</Encrypt></xml> with its msg_signature
// for the timestamp and nonce: what WeChat POSTs to a component's
// callback, for the emulator's push driver.
func (c *Crypter) Seal(msg []byte, timestamp, nonce string) (body []byte, msgSignature string, err error) {
	if len(timestamp) > maxParam || len(nonce) > maxParam {
		return nil, "", fmt.Errorf("%w: timestamp or nonce over %d bytes", ErrMalformed, maxParam)
	}
	enc, err := c.Encrypt(msg)
	if err != nil {
		return nil, "", err
	}
	// Neither the appid ([A-Za-z0-9_-]) nor base64 can hold "]]>".
	body = []byte("<xml><AppId><![CDATA[" + c.appID + "]]></AppId><Encrypt><![CDATA[" + enc + "]]></Encrypt></xml>")
	return body, Signature(c.token, timestamp, nonce, enc), nil
}

// flat is a parsed <xml> document: each top-level field's text.
type flat struct {
	text    map[string][]byte
	bad     map[string]string // field → why it cannot be read (twice, nested)
	present map[string]bool
}

// get returns a field's text (surrounding white space removed). A
// required field that is missing or empty, or a field that is present
// twice or holds elements, is ErrMalformed.
func (f *flat) get(name string, required bool) (string, error) {
	if why, ok := f.bad[name]; ok {
		return "", fmt.Errorf("%w: field %s %s", ErrMalformed, name, why)
	}
	s := string(bytes.TrimSpace(f.text[name]))
	if required && s == "" {
		return "", fmt.Errorf("%w: field %s missing or empty", ErrMalformed, name)
	}
	return s, nil
}

// parseFlat reads <xml><Name>text</Name>…</xml>. The decoder (Token, so
// that end tags must match) is strict
// and knows no entity beyond XML's five, so an entity bomb fails at its
// first reference; a DOCTYPE is refused outright, as is depth over
// maxDepth, more than maxElements elements, a second root or text
// outside the root. Errors say where, never the text.
func parseFlat(doc []byte) (*flat, error) {
	d := xml.NewDecoder(bytes.NewReader(doc))
	d.Strict = true
	f := &flat{text: map[string][]byte{}, bad: map[string]string{}, present: map[string]bool{}}
	depth, elements, roots := 0, 0, 0
	var field string // the top-level field being read
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: XML: %s", ErrMalformed, xmlErrorKind(err))
		}
		switch t := tok.(type) {
		case xml.StartElement:
			elements++
			if elements > maxElements {
				return nil, fmt.Errorf("%w: over %d elements", ErrMalformed, maxElements)
			}
			depth++
			if depth > maxDepth {
				return nil, fmt.Errorf("%w: elements nested over %d deep", ErrMalformed, maxDepth)
			}
			switch depth {
			case 1:
				roots++
				if roots > 1 || t.Name.Local != "xml" || t.Name.Space != "" {
					return nil, fmt.Errorf("%w: the document is not one <xml> element", ErrMalformed)
				}
			case 2:
				field = t.Name.Local
				if t.Name.Space != "" {
					field = t.Name.Space + ":" + field
				}
				if f.present[field] {
					f.bad[field] = "appears twice"
				}
				f.present[field] = true
			default:
				f.bad[field] = "holds elements"
			}
		case xml.EndElement:
			depth--
		case xml.CharData:
			switch {
			case depth == 2:
				f.text[field] = append(f.text[field], t...)
			case depth == 0 && len(bytes.TrimSpace(t)) > 0:
				return nil, fmt.Errorf("%w: text outside <xml>", ErrMalformed)
			}
		case xml.Directive:
			return nil, fmt.Errorf("%w: a DOCTYPE or other directive", ErrMalformed)
		case xml.ProcInst, xml.Comment:
			// <?xml version="1.0"?> and comments carry nothing.
		}
	}
	if roots != 1 || depth != 0 {
		return nil, fmt.Errorf("%w: the document is not one whole <xml> element", ErrMalformed)
	}
	return f, nil
}

// xmlErrorKind describes a decoder error without quoting the input (an
// *xml.SyntaxError's message can hold a piece of it).
func xmlErrorKind(err error) string {
	var se *xml.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("syntax error on line %d", se.Line)
	}
	return "unreadable"
}
