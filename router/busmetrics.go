package router

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
)

// handlerMetrics are three of Watermill's metrics, under their names,
// labels and buckets: handler_execution_time_seconds{handler_name,
// success} and subscriber_messages_received_total{handler_name,
// subscriber_name, acked} of the router, and publish_time_seconds
// {handler_name, publisher_name, success} of the capture handlers'
// publisher. They are counted with the series resolved when a handler
// is added. Watermill's builder counts them with label maps built per
// message, a goroutine per message waiting for its ack and an extra
// channel hop in front of the subscriber: about a fifth of what
// Watermill's router costs per message (callgrind); its publisher
// decorator with a label map and a context per publish. A message is
// acked when its handler returns nil, nacked otherwise, so the handler's
// result is the ack.
type handlerMetrics struct {
	exec     *prometheus.HistogramVec
	received *prometheus.CounterVec
	publish  *prometheus.HistogramVec
}

func newHandlerMetrics(reg prometheus.Registerer) (*handlerMetrics, error) {
	m := &handlerMetrics{
		exec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "handler_execution_time_seconds",
			Help:    "The total time elapsed while executing the handler function in seconds",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1},
		}, []string{"handler_name", "success"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "subscriber_messages_received_total",
			Help: "The total number of messages received by the subscriber",
		}, []string{"handler_name", "subscriber_name", "acked"}),
		publish: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "publish_time_seconds",
			Help: "The time that a publishing attempt (success or not) took in seconds",
		}, []string{"handler_name", "publisher_name", "success"}),
	}
	var err error
	if m.exec, err = register(reg, m.exec); err != nil {
		return nil, err
	}
	if m.received, err = register(reg, m.received); err != nil {
		return nil, err
	}
	if m.publish, err = register(reg, m.publish); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector registered under its
// name already: a second Run of the router reuses them.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	var are prometheus.AlreadyRegisteredError
	if err := reg.Register(c); errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
		return c, fmt.Errorf("router: handler metrics: %w", err)
	} else if err != nil {
		return c, fmt.Errorf("router: handler metrics: %w", err)
	}
	return c, nil
}

// structName names a subscriber or publisher as Watermill's metrics do.
func structName(v any) string {
	if s, ok := v.(fmt.Stringer); ok {
		return s.String()
	}
	return strings.TrimLeft(fmt.Sprintf("%T", v), "*")
}

// forward is the handler of a capture: it publishes each message to
// topic with pub, timed under handler's series.
func (m *handlerMetrics) forward(handler, topic string, pub message.Publisher) message.NoPublishHandlerFunc {
	name := structName(pub)
	ok, failed := m.publish.WithLabelValues(handler, name, "true"), m.publish.WithLabelValues(handler, name, "false")
	return func(msg *message.Message) error {
		start := time.Now()
		err := pub.Publish(topic, msg)
		if err != nil {
			failed.Observe(time.Since(start).Seconds())
			return err
		}
		ok.Observe(time.Since(start).Seconds())
		return nil
	}
}

// middleware counts the messages of one handler, which reads from sub.
func (m *handlerMetrics) middleware(handler string, sub message.Subscriber) message.HandlerMiddleware {
	name := structName(sub)
	ok, failed := m.exec.WithLabelValues(handler, "true"), m.exec.WithLabelValues(handler, "false")
	acked, nacked := m.received.WithLabelValues(handler, name, "acked"), m.received.WithLabelValues(handler, name, "nacked")
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			start := time.Now()
			out, err := h(msg)
			if err != nil {
				failed.Observe(time.Since(start).Seconds())
				nacked.Inc()
				return out, err
			}
			ok.Observe(time.Since(start).Seconds())
			acked.Inc()
			return out, nil
		}
	}
}
