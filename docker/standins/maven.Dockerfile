# Stand-in for maven:3.9-eclipse-temurin-17: Debian's Maven and OpenJDK 17, the JDK where
# Temurin's images put it (/opt/java/openjdk), the machine's CA bundles for Maven Central.
FROM iotpipe-standin-rootfs:maven
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY cacerts /etc/ssl/certs/java/cacerts
RUN mkdir -p /opt/java && ln -s /usr/lib/jvm/java-17-openjdk-* /opt/java/openjdk
ENV JAVA_HOME=/opt/java/openjdk MAVEN_HOME=/usr/share/maven LANG=C.UTF-8 \
    PATH=/opt/java/openjdk/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["mvn"]
