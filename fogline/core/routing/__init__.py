"""Routing to upstream endpoints: pools, power-of-two-choices and hash rings, the dispatcher, and its
resilience (circuit breakers, ejection limits, retry budgets)."""
