"""The chart's monitoring artefacts checked by the real tools: helm renders them, promtool tests
the rules, and a real Prometheus on loopback scrapes real marfleet processes to prove every
dashboard query, rule and adapter expression returns data."""
