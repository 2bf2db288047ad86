package engine_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/samples"
)

func evalCond(t *testing.T, src string, ev *event.Event) (bool, error) {
	t.Helper()
	c, err := engine.CompileCondition(src)
	if err != nil {
		t.Fatalf("CompileCondition(%q): %v", src, err)
	}
	return c.Eval(ev)
}

func checkConds(t *testing.T, ev *event.Event, cases map[string]bool) {
	t.Helper()
	for src, want := range cases {
		got, err := evalCond(t, src, ev)
		if err != nil {
			t.Errorf("Eval(%q): %v", src, err)
			continue
		}
		if got != want {
			t.Errorf("Eval(%q) = %v; want %v", src, got, want)
		}
	}
}

func TestConditionEventView(t *testing.T) {
	ev := samples.Event(t, samples.OrderUpdate)
	checkConds(t, ev, map[string]bool{
		`entity_type == 'Order'`:                                   true,
		`entity_type == 'Customer'`:                                false,
		`event_type == 'UPDATE'`:                                   true,
		`entity_id == '42'`:                                        true,
		`id == '7d3f1b2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b'`:             true,
		`user_id == 'u-7' && tenant_id == 'acme'`:                  true,
		`source == 'orders_db'`:                                    true,
		`seq == 981 && seq > 900`:                                  true,
		`timestamp > date('2024-01-01T00:00:00Z')`:                 true,
		`timestamp.Year() == 2024`:                                 true,
		`data.status == 'shipped'`:                                 true,
		`data.status != 'shipped'`:                                 false,
		`data.status in ['paid', 'shipped']`:                       true,
		`data.customer.address.city == 'Paris'`:                    true,
		`data.customer.name == 'Zoë'`:                              true,
		`data["first.last"] == 'dotted key'`:                       true,
		`data.tags[1] == 'b' && len(data.tags) == 2`:               true,
		`'a' in data.tags`:                                         true,
		`changes.status.old == 'paid'`:                             true,
		`changes.status.new == data.status`:                        true,
		`changes.customer.new.email == 'b@x'`:                      true,
		`data.flag`:                                                true,
		`data.flag && !(data.status == 'paid')`:                    true,
		`data.total > 50 || data.status == 'cancelled'`:            true,
		`data.note == nil`:                                         true,
		`$env.data.status == 'shipped'`:                            true,
		`$env["changes"].status.new == 'shipped'`:                  true,
		`all(data.tags, {# != 'z'}) && any(data.tags, {# == 'a'})`: true,
	})
}

func TestConditionNumbersCompareByValue(t *testing.T) {
	ev := samples.Event(t, samples.OrderUpdate)
	if _, ok := ev.Data["total"].(int64); !ok {
		t.Fatalf("data.total decodes as %T; the test expects int64", ev.Data["total"])
	}
	checkConds(t, ev, map[string]bool{
		// int64 in the event against int and float literals.
		`data.total == 100`:        true,
		`data.total == 100.0`:      true,
		`data.total == 100.00`:     true,
		`100.00 == data.total`:     true,
		`data.total != 100.0`:      false,
		`data.total == 100.5`:      false,
		`data.total >= 100.0`:      true,
		`data.total < 100.01`:      true,
		`data.total in [1, 100.0]`: true,
		// float64 in the event against int literals.
		`data.price == 100.5`: true,
		`data.price > 100`:    true,
		`data.price == 100`:   false,
		`data.dims.h == 3.5`:  true,
		// two event values of different Go types.
		`changes.total.old == 90`:                true,
		`changes.same.old == changes.same.new`:   true,
		`changes.total.old != changes.total.new`: true,
		`data.total == changes.total.new`:        true,
		`data.total + 0.5 == 100.5`:              true,
		`seq == 981.0`:                           true,
		// objects and lists compare element by element by value.
		`data.dims == {'w': 2.0, 'h': 3.5}`:          true,
		`data.dims == {'w': 2, 'h': 3.5}`:            true,
		`data.dims != {'w': 2, 'h': 3.5}`:            false,
		`data.dims == {'w': 2}`:                      false,
		`data.dims == {'w': 2, 'h': 3.5, 'd': nil}`:  false,
		`data.tags == ['a', 'b']`:                    true,
		`data.tags == ['a']`:                         false,
		`[data.total, 1] == [100.0, 1.0]`:            true,
		`changes.customer.old == {'email': 'a@x'}`:   true,
		`changes.total == {'old': 90, 'new': 100.0}`: true,
		`changes.total != {'old': 90, 'new': 101}`:   true,
		// 2^53+1 is not rounded to 2^53.
		`data.big == 9007199254740993`: true,
		`data.big > 9007199254740992`:  true,
	})
}

func TestConditionFunctions(t *testing.T) {
	ev := samples.Event(t, samples.OrderUpdate)
	checkConds(t, ev, map[string]bool{
		`has_field('status')`:                true,
		`has_field('note')`:                  true, // present, even though null
		`has_field('missing')`:               false,
		`has_field('customer.address.city')`: true,
		`has_field('customer.address.zip')`:  false,
		`has_field('status.length')`:         false,
		`has_field('first.last')`:            true,

		`field_changed('status')`:   true,
		`field_changed('total')`:    true,  // 90.0 → 100
		`field_changed('same')`:     false, // listed, but 1 == 1.0
		`field_changed('price')`:    false, // not in changes
		`field_changed('customer')`: true,
		// a dotted path reaches into a changed object
		`field_changed('customer.email')`: true,
		`field_changed('customer.name')`:  false,
		`field_changed('price.cents')`:    false,

		`field_changed_to('status', 'shipped')`:     true,
		`field_changed_to('status', 'paid')`:        false,
		`field_changed_to('total', 100.0)`:          true,
		`field_changed_to('total', 100)`:            true,
		`field_changed_to('same', 1)`:               false, // did not change
		`field_changed_to('price', 100.5)`:          false,
		`field_changed_to('customer.email', 'b@x')`: true,

		`field_changed_from('status', 'paid')`:             true,
		`field_changed_from('status', 'shipped')`:          false,
		`field_changed_from('total', 90)`:                  true,
		`field_changed_from('customer', {'email': 'a@x'})`: true,

		`data.status == 'shipped' && field_changed('status')`: true,
		`!field_changed('price') && has_field('price')`:       true,
	})
}

func TestConditionFieldChangedOnOtherEventTypes(t *testing.T) {
	for _, typ := range []string{"INSERT", "DELETE", "CUSTOM"} {
		t.Run(typ, func(t *testing.T) {
			ev := samples.Event(t, `{"id":"7d3f1b2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b","event_type":"`+typ+`","entity_type":"Order","data":{"status":"new"}}`)
			checkConds(t, ev, map[string]bool{
				`field_changed('status')`:             false,
				`field_changed_to('status', 'new')`:   false,
				`field_changed_from('status', 'new')`: false,
				`!field_changed('status')`:            true,
				`has_field('status')`:                 true,
				`changes == nil`:                      true,
			})
		})
	}
}

func TestConditionFieldChangedWithoutChanges(t *testing.T) {
	ev := samples.Event(t, `{"id":"7d3f1b2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b","event_type":"UPDATE","entity_type":"Order","data":{"status":"shipped"}}`)
	if ev.Changes != nil {
		t.Fatalf("Changes = %v; want nil", ev.Changes)
	}
	for src, fn := range map[string]string{
		`field_changed('status')`:                             `field_changed('status')`,
		`field_changed_to('status', 'shipped')`:               `field_changed_to('status', …)`,
		`field_changed_from('status', 'paid')`:                `field_changed_from('status', …)`,
		`data.status == 'shipped' && field_changed('status')`: `field_changed('status')`,
	} {
		ok, err := evalCond(t, src, ev)
		if err == nil {
			t.Errorf("Eval(%q) = %v, nil; want an error", src, ok)
			continue
		}
		want := fn + ": the event carries no changes (the producer did not track them)"
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Eval(%q) error = %q; want it to contain %q", src, err, want)
		}
		if !errors.Is(err, engine.ErrNoChanges) {
			t.Errorf("Eval(%q) error %v does not wrap ErrNoChanges", src, err)
		}
	}
	// Short-circuit: the function is not reached, so there is no error.
	checkConds(t, ev, map[string]bool{`data.status == 'paid' && field_changed('status')`: false})

	// Changes tracked but empty: nothing changed, no error.
	ev.Changes = map[string]event.Change{}
	checkConds(t, ev, map[string]bool{`field_changed('status')`: false})
}

func TestConditionAbsentFields(t *testing.T) {
	ev := samples.Event(t, samples.OrderUpdate)
	// Absent, at any depth, is nil: == is false, != is true.
	checkConds(t, ev, map[string]bool{
		`data.missing == 'x'`:                 false,
		`data.missing != 'x'`:                 true,
		`data.missing == nil`:                 true,
		`data.missing == data.other`:          true,
		`data.missing.deeper.city == 'Paris'`: false,
		`data.customer.phone.number == '1'`:   false,
		`data.missing?.city == 'Paris'`:       false,
		`(data.missing ?? 'none') == 'none'`:  true,
		`data.flag == true`:                   true,
		`changes.price.old == 1`:              false,
		`data.tags[5] == 'x'`:                 false, // past the end
		`data.tags[-1] == 'b'`:                true,  // from the end
		`changes.missing == nil`:              true,
		// In a boolean context absent is false.
		`data.missing`:                false,
		`!data.missing`:               true,
		`not data.missing.deep`:       true,
		`data.missing || data.flag`:   true,
		`data.missing && true`:        false,
		`data.flag and data.missing`:  false,
		`data.missing ? false : true`: true,
	})
	// Without changes, changes is nil and reading into it is absent too.
	noChanges := samples.Event(t, `{"id":"7d3f1b2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b","event_type":"INSERT","entity_type":"Order","data":{}}`)
	checkConds(t, noChanges, map[string]bool{`changes.status.old == 'paid'`: false})
}

func TestConditionRuntimeErrors(t *testing.T) {
	ev := samples.Event(t, samples.OrderUpdate)
	cases := []struct{ src, want string }{
		{`data.missing > 1`, "at 1:14: invalid operation: <nil> > int"},
		{`data.missing.deep >= 1`, "at 1:19: invalid operation"},
		{`data.status > 3`, "at 1:13: invalid operation: string > int"},
		{`data.status + 1 == 2`, "at 1:13: invalid operation"},
		{`len(data.missing) > 0`, "at 1:1: invalid argument for len"},
		{`data.status.x == 1`, `at 1:13: cannot read x of a string`},
		{`data.total.cents > 1`, `cannot read cents of a number`},
		{`changes.status.Old == 'paid'`, "a change has old and new, not Old"},
		{`data.tags['x'] == 1`, "a list index must be an integer, got x"},
		{`data[1] == 1`, "an object key must be a string, got int"},
		{`data.price`, "at 1:1: invalid operation: bool(float64)"},
		{`!data.status`, "at 1:"},
		{`data.status && true`, "at 1:"},
		{`has_field(data.total)`, "has_field: the field name must be a string, got int64"},
	}
	for _, c := range cases {
		ok, err := evalCond(t, c.src, ev)
		if err == nil {
			t.Errorf("Eval(%q) = %v, nil; want an error containing %q", c.src, ok, c.want)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("Eval(%q) error = %q; want it to contain %q", c.src, err, c.want)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("Eval(%q) error spans lines: %q", c.src, err)
		}
	}
}

func TestObserverAcceptsErrorIsPermanent(t *testing.T) {
	ev := samples.Event(t, samples.OrderUpdate)
	c, err := engine.CompileCondition(`data.status > 3`)
	if err != nil {
		t.Fatal(err)
	}
	o := &engine.Observer{Name: "order_shipped", Condition: c}
	ok, err := o.Accepts(ev)
	if ok || err == nil {
		t.Fatalf("Accepts = %v, %v; want false and an error", ok, err)
	}
	if !handlers.IsPermanent(err) {
		t.Errorf("Accepts error %v is not permanent", err)
	}
	if !strings.Contains(err.Error(), `observer "order_shipped": condition: at 1:13:`) {
		t.Errorf("Accepts error = %q; want it to name the observer and the position", err)
	}
	if ok, err := (&engine.Observer{Name: "all"}).Accepts(ev); !ok || err != nil {
		t.Errorf("Accepts without condition = %v, %v; want true, nil", ok, err)
	}
}

func TestConditionCompileErrors(t *testing.T) {
	cases := []struct{ src, want string }{
		{`data.status ==`, "does not compile at 1:14: unexpected token EOF"},
		{`data.status == 'shipped' &&& x`, "does not compile at 1:"},
		{`data.status = 'shipped'`, "does not compile at 1:13:"},
		{"data.status == 'a' &&\n  stauts == 'b'", "does not compile at 2:3: unknown name stauts"},
		{`status == 'shipped'`, "does not compile at 1:1: unknown name status"},
		{`has_field()`, "not enough arguments to call has_field"},
		{`has_field('a', 'b')`, "too many arguments to call has_field"},
		{`has_field(1)`, "does not compile at 1:11: cannot use int as argument (type string) to call has_field"},
		{`field_changed_to('status')`, "not enough arguments to call field_changed_to"},
		{`nosuch('x')`, "unknown name nosuch"},
		{`entity_type + 1`, "does not compile at 1:13:"},
		{`'shipped'`, "does not compile"},
		{``, "is empty"},
		{`   `, "is empty"},
		{strings.Repeat("x", engine.MaxConditionLen+1), "is 4097 bytes long; the limit is 4096"},
	}
	for _, c := range cases {
		_, err := engine.CompileCondition(c.src)
		if err == nil {
			t.Errorf("CompileCondition(%q) = nil error; want %q", c.src, c.want)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("CompileCondition(%q) error = %q; want it to contain %q", c.src, err, c.want)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("CompileCondition(%q) error spans lines: %q", c.src, err)
		}
	}
	// At the limit it compiles.
	long := "data.status == '" + strings.Repeat("x", engine.MaxConditionLen-17) + "'"
	if len(long) != engine.MaxConditionLen {
		t.Fatalf("test bug: len = %d", len(long))
	}
	if _, err := engine.CompileCondition(long); err != nil {
		t.Errorf("CompileCondition(4096 bytes): %v", err)
	}
}

func TestCheckReportsConditionWithObserverAndPosition(t *testing.T) {
	cfg, err := config.Parse([]byte(`
[observers.order_shipped]
event = "UPDATE"
entity = "Order"
condition = "data.status == 'shipped' && field_changd('status')"
actions = [{ type = "probe", url = "http://x" }]

[observers.fine]
condition = "field_changed('status')"
actions = [{ type = "probe", url = "http://x" }]
`), nil)
	if err != nil {
		t.Fatalf("config.Parse: %v", err)
	}
	err = engine.Check(cfg, probeRegistry(t), config.Features{})
	want := "observers.order_shipped.condition: does not compile at 1:29: unknown name field_changd"
	if err == nil || err.Error() != want {
		t.Fatalf("Check error = %v; want %q", err, want)
	}
}

func TestConditionConcurrentEval(t *testing.T) {
	c, err := engine.CompileCondition(`data.n % 2 == 0 && field_changed('n') && changes.n.old == data.n - 1`)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				n := int64(g*1000 + i)
				ev := &event.Event{
					Type: event.Update, Data: map[string]any{"n": n},
					Changes: map[string]event.Change{"n": {Old: n - 1, New: n}},
				}
				ok, err := c.Eval(ev)
				if err != nil || ok != (n%2 == 0) {
					errs <- fmt.Errorf("n=%d: Eval = %v, %v", n, ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func BenchmarkConditionEval(b *testing.B) {
	ev := samples.Event(b, samples.OrderUpdate)
	for _, bc := range []struct{ name, src string }{
		{"simple", `data.status == 'shipped'`},
		{"typical", `entity_type == 'Order' && data.status == 'shipped' && field_changed('status') && data.total > 50`},
		{"nested", `data.customer.address.city == 'Paris'`},
		{"changes", `changes.status.old == 'paid' && changes.status.new == 'shipped'`},
		{"object_eq", `data.dims == {'w': 2, 'h': 3.5}`},
	} {
		c, err := engine.CompileCondition(bc.src)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if ok, err := c.Eval(ev); !ok || err != nil {
					b.Fatalf("Eval = %v, %v", ok, err)
				}
			}
		})
	}
}

func TestConditionDocExamples(t *testing.T) {
	ev, rows := samples.DocExamples(t, "conditions.md")
	for _, r := range rows {
		src, want := r[0], r[1]
		got, err := evalCond(t, src, ev)
		switch {
		case want == "error":
			if err == nil {
				t.Errorf("docs: %s = %v; the page says it is an error", src, got)
			}
		case err != nil:
			t.Errorf("docs: %s: %v; the page says %s", src, err, want)
		case fmt.Sprint(got) != want:
			t.Errorf("docs: %s = %v; the page says %s", src, got, want)
		}
	}
}
