// Package actiontest lets the author of an action type test it in a few
// lines, the way millrace will use it: decoded strictly from its config
// section, built, executed through handlers.Execute and closed.
//
// Check runs the checks every action must pass:
//
//   - it builds: the section decodes, validates and builds; a config
//     error is reported with its key path;
//   - a cancelled context: Execute returns within CancelBound and its
//     error, if any, is not permanent (a shutdown must not dead-letter
//     the event);
//   - a deadline, when Case.Blocking names a section under which Execute
//     would block: Execute under a 200ms deadline returns within
//     DeadlineBound with a transient error;
//   - Close, when the action has one, can be called twice;
//   - a panic inside Execute comes back from handlers.Execute as a
//     permanent error naming the panic.
//
// Build gives a built action for the author's own tests, and
// ExpectPermanent, ExpectTransient and ExpectRetryAfter check the class of
// an error. SilentServer starts a server that accepts connections and
// never answers, for Case.Blocking.
//
// A test of a custom "shout" action:
//
//	func TestShoutConforms(t *testing.T) {
//		reg := handlers.NewRegistry()
//		handlers.MustRegister(reg, "shout", New)
//		actiontest.Check(t, actiontest.Case{
//			Registry: reg,
//			Config:   config.Action{"type": "shout", "message": "{{.entity_id}}"},
//		})
//	}
//
// and of an HTTP action, which must give up on a server that never
// answers:
//
//	actiontest.Check(t, actiontest.Case{
//		Registry: reg,
//		Config:   config.Action{"type": "webhook", "url": srv.URL, "allow_private": true},
//		Blocking: config.Action{"type": "webhook", "url": actiontest.SilentServer(t).URL, "allow_private": true},
//	})
//
// The checks need no service: a cancelled context and a silent server
// stand in for the failures. What the action does on success, and how it
// classifies its own errors, is for the author's tests, with Build and
// the Expect functions.
package actiontest
