"""marfleet's Kubernetes operator: reconciles InferenceService objects into Deployments,
Services, autoscalers and traffic objects."""
