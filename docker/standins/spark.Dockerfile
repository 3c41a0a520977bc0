# Stand-in for apache/spark:4.2.0-scala2.13-java17-python3-ubuntu, after its documented layout:
# Spark's jars, scripts and Python zips under /opt/spark (taken from the pyspark distribution),
# /opt/entrypoint.sh, user spark (185), work dir /opt/spark/work-dir, python3 with pip.
FROM iotpipe-standin-rootfs:spark
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY cacerts /etc/ssl/certs/java/cacerts
RUN groupadd --system --gid=185 spark && useradd --system --uid=185 --gid=spark spark \
    && mkdir -p /opt/java /opt/spark/work-dir && chmod g+w /opt/spark/work-dir \
    && ln -s /usr/lib/jvm/java-17-openjdk-* /opt/java/openjdk && touch /opt/spark/RELEASE \
    && chown -R spark:spark /opt/spark
COPY --chown=spark:spark spark/ /opt/spark/
COPY entrypoint.sh /opt/entrypoint.sh
ENV SPARK_HOME=/opt/spark JAVA_HOME=/opt/java/openjdk LANG=C.UTF-8 \
    PATH=/opt/java/openjdk/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /opt/spark/work-dir
USER spark
ENTRYPOINT ["/opt/entrypoint.sh"]
