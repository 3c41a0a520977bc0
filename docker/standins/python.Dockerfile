# Stand-in for python:3.11-slim-bookworm (docker/images.py builds it when the real image cannot
# be pulled): Debian's python3.11 as a venv at /usr/local, so `python` and `pip` are on PATH.
FROM iotpipe-standin-rootfs:python
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN python3.11 -m venv /usr/local
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
CMD ["python3"]
