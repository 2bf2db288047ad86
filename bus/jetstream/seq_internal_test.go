package jetstream

import (
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
)

// consumerSeq reads the consumer sequence from both forms of the ack
// subject, and nothing from anything else.
func TestConsumerSeq(t *testing.T) {
	for reply, want := range map[string]uint64{
		"$JS.ACK.ORDERS.workers_events_p3.1.2045.77.1733300000000000000.12":                 77,
		"$JS.ACK._.ACCHASH.ORDERS.workers_events_p3.2.2045.78.1733300000000000000.11.abcde": 78,
		"$JS.ACK.dom.ACCHASH.ORDERS.c.1.9.5.1733300000000000000.0":                          5,
		"$JS.ACK.ORDERS.c.1.9": 0,
		"_INBOX.abc.def":       0,
		"":                     0,
		"$JS.ACK.ORDERS.c.1.9.x.1733300000000000000.0": 0,
	} {
		if got := consumerSeq(reply); got != want {
			t.Errorf("consumerSeq(%q) = %d, want %d", reply, got, want)
		}
	}
}

// The delivery count comes from the same token as nats.Msg's Metadata
// gives it, in both forms of the reply subject.
func TestReplyDelivered(t *testing.T) {
	for _, reply := range []string{
		"$JS.ACK.ORDERS.workers_events_p3.3.2045.77.1733300000000000000.12",
		"$JS.ACK._.ACCHASH.ORDERS.workers_events_p3.12.2045.78.1733300000000000000.11.abcde",
		"$JS.ACK.dom.ACCHASH.ORDERS.c.1.9.5.1733300000000000000.0",
	} {
		md, err := (&nats.Msg{Reply: reply, Sub: &nats.Subscription{}}).Metadata()
		if err != nil {
			t.Fatalf("%q: nats.go: %v", reply, err)
		}
		n, text, ok := replyNumber(reply, ackDeliveredToken)
		if !ok || n != md.NumDelivered || text != strconv.FormatUint(md.NumDelivered, 10) {
			t.Errorf("replyNumber(%q) = %d %q %v; nats.go reads %d", reply, n, text, ok, md.NumDelivered)
		}
	}
	for _, reply := range []string{"$JS.ACK.ORDERS.c.1.9", "_INBOX.abc.def", "", "$JS.ACK.ORDERS.c.x.9.5.1733300000000000000.0"} {
		if _, _, ok := replyNumber(reply, ackDeliveredToken); ok {
			t.Errorf("replyNumber(%q) read a delivery count", reply)
		}
	}
}
