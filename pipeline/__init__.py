"""The whole recipe in one command (make all, make demo): orchestration over every step."""
