//! End-to-end suite for Kandle (built by a later issue).
