package jetstream

import "testing"

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
