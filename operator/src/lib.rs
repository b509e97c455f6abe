//! kandle-operator: reconciles `LLMDeployment` resources (built by a later issue).
