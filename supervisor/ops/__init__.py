"""What operators see and steer: systemd notification, metrics and health endpoints, the doctor."""
